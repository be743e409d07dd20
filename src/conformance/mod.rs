//! The conformance runner behind `beit-seg verify`: loads each case, runs it on a [`Backend`],
//! and compares every expected tensor by the rules of the fixture format.
//!
//! A backend produces named outputs; the runner decides what passes. Backends never see the
//! expected values, only the names that are wanted.

pub mod case;
pub mod checkpoint_cases;
pub mod compare;
pub mod data_cases;
pub mod pipeline_case;
pub mod report;

use std::collections::BTreeMap;
use std::time::Instant;

use ndarray::ArrayD;

use crate::array::AnyArray;
use crate::config::SegmentorConfig;
use crate::reference::segmentor::EncoderDecoder;
use crate::reference::Recorder;
use crate::weights::WeightStore;
use crate::Float;
use case::{Case, Dtype, Tolerance};
use compare::{compare_floats, compare_labels, Status, TensorResult};
use report::{CaseReport, CaseStatus};

/// An output tensor of a backend, widened for comparison.
#[derive(Debug, Clone)]
pub enum OutTensor {
    Float(ArrayD<f64>),
    Label(ArrayD<i64>),
}

/// Everything a backend needs to run a `segmentor` case.
pub struct SegmentorRequest<'a> {
    pub model: &'a SegmentorConfig,
    pub weights: Vec<(String, AnyArray)>,
    pub inputs: AnyArray,
    /// The precision to run in.
    pub dtype: Dtype,
    /// The names to produce.
    pub wanted: Vec<String>,
}

pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// An implementation under test.
pub trait Backend: Sync {
    fn name(&self) -> String;
    /// Runs the model and returns the wanted outputs it can produce.
    fn run_segmentor(&self, req: SegmentorRequest<'_>) -> Result<BTreeMap<String, OutTensor>, BackendError>;
}

/// Returned (boxed) by a kind's runner when this build cannot check the case at all (e.g. a
/// pipeline case with JPEG images without the exact decoder): the case is reported as skipped,
/// with the reason, never as passed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SkipCase(pub String);

/// The ndarray reference.
pub struct ReferenceBackend;

fn run_reference<T: Float>(req: SegmentorRequest<'_>) -> Result<BTreeMap<String, OutTensor>, BackendError> {
    let ws = WeightStore::<T>::from_arrays(req.weights);
    let model = EncoderDecoder::<T>::load(req.model, ws)?;
    let inputs = req
        .inputs
        .to_float::<T>()
        .ok_or_else(|| format!("inputs: expected a float array, got {}", req.inputs.dtype_name()))?;
    let inputs = inputs
        .into_dimensionality::<ndarray::Ix4>()
        .map_err(|_| format!("inputs: expected an NCHW array (4 dimensions), got shape {:?}", req.inputs.shape()))?;
    let mut rec = Recorder::<T>::only(req.wanted);
    model.forward(&inputs, &mut rec)?;
    let mut out = BTreeMap::new();
    for (k, v) in rec.floats {
        out.insert(k, OutTensor::Float(v.mapv(|x| x.to_f64_exact())));
    }
    for (k, v) in rec.ints {
        out.insert(k, OutTensor::Label(v));
    }
    Ok(out)
}

impl Backend for ReferenceBackend {
    fn name(&self) -> String {
        "ref".into()
    }
    fn run_segmentor(&self, req: SegmentorRequest<'_>) -> Result<BTreeMap<String, OutTensor>, BackendError> {
        match req.dtype {
            Dtype::F32 => run_reference::<f32>(req),
            Dtype::F64 => run_reference::<f64>(req),
        }
    }
}

/// Options of a verify run.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Run float64 cases in float32 with the fp32 tolerance (reported as such).
    pub as_f32: bool,
    /// Do not fail a case because some expected tensors are not produced.
    pub allow_uncovered: bool,
}

/// Loads and runs one case directory.
pub fn run_case_dir(dir: &std::path::Path, backend: &dyn Backend, opts: &VerifyOptions) -> CaseReport {
    let start = Instant::now();
    let mut rep = match Case::load(dir) {
        Ok(case) => run_case(&case, backend, opts),
        Err(e) => CaseReport {
            name: dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            dir: dir.to_path_buf(),
            kind: "?".into(),
            backend: backend.name(),
            dtype: "?".into(),
            run_dtype: "?".into(),
            status: CaseStatus::Fail,
            message: Some(format!("cannot load case: {e}")),
            tensors: vec![],
            seconds: 0.0,
        },
    };
    rep.seconds = start.elapsed().as_secs_f64();
    rep
}

/// Runs a loaded case.
pub fn run_case(case: &Case, backend: &dyn Backend, opts: &VerifyOptions) -> CaseReport {
    let run_dtype = if opts.as_f32 { Dtype::F32 } else { case.dtype };
    let mut rep = CaseReport {
        name: case.name.clone(),
        dir: case.dir.clone(),
        kind: case.kind.clone(),
        backend: backend.name(),
        dtype: case.dtype.name().into(),
        run_dtype: run_dtype.name().into(),
        status: CaseStatus::Fail,
        message: None,
        tensors: vec![],
        seconds: 0.0,
    };
    let other_kind = || {
        checkpoint_cases::run(case)
            .or_else(|| data_cases::run(case, backend, opts))
            .or_else(|| pipeline_case::run(case, backend, opts))
    };
    let result = match case.kind.as_str() {
        "segmentor" => run_segmentor_case(case, backend, opts, run_dtype),
        other => match other_kind() {
            // These kinds check the library itself (converter, resize, metric, pipeline), the
            // same for every model backend.
            Some(r) => {
                if other != "pipeline" {
                    rep.backend = "lib".into();
                }
                r
            }
            None => {
                rep.status = CaseStatus::Skipped;
                rep.message = Some(format!("kind `{other}` is not implemented by backend `{}`", backend.name()));
                return rep;
            }
        },
    };
    match result {
        Ok(tensors) => {
            let any_fail = tensors.iter().any(|t| t.status == Status::Fail);
            let uncovered = tensors.iter().filter(|t| t.status == Status::NotCovered).count();
            rep.status = if any_fail || (uncovered > 0 && !opts.allow_uncovered) || tensors.is_empty() {
                CaseStatus::Fail
            } else {
                CaseStatus::Pass
            };
            if tensors.is_empty() {
                rep.message = Some("the case has no expected outputs".into());
            } else if uncovered > 0 {
                rep.message =
                    Some(format!("{uncovered} expected tensor(s) not covered by backend `{}`", backend.name()));
            }
            if let Some(f) = tensors.iter().find(|t| t.status == Status::Fail) {
                let m = format!("first failing tensor: {}", f.name);
                rep.message = Some(match rep.message.take() {
                    Some(prev) => format!("{m}; {prev}"),
                    None => m,
                });
            }
            rep.tensors = tensors;
        }
        Err(e) => {
            rep.status = if e.downcast_ref::<SkipCase>().is_some() { CaseStatus::Skipped } else { CaseStatus::Fail };
            rep.message = Some(e.to_string());
        }
    }
    rep
}

fn run_segmentor_case(
    case: &Case,
    backend: &dyn Backend,
    opts: &VerifyOptions,
    run_dtype: Dtype,
) -> Result<Vec<TensorResult>, BackendError> {
    let model_v = case
        .manifest
        .get("model")
        .ok_or_else(|| format!("{}: `model` is missing", case.dir.join("case.json").display()))?;
    let model =
        SegmentorConfig::from_value(model_v).map_err(|e| format!("{}: {e}", case.dir.join("case.json").display()))?;
    let weights = load_case_weights(case, &model)?;
    let inputs = crate::array::read_npy(&case.input_file("inputs")?)?;
    // Read every expected output first: a broken fixture is reported before any compute.
    let mut expected = Vec::with_capacity(case.outputs.len());
    for (name, file) in &case.outputs {
        expected.push((name.clone(), case.read_output(file)?));
    }
    let wanted: Vec<String> = expected.iter().map(|(n, _)| n.clone()).collect();
    let produced =
        backend.run_segmentor(SegmentorRequest { model: &model, weights, inputs, dtype: run_dtype, wanted })?;
    let tol_for = |name: &str| -> Tolerance {
        if opts.as_f32 && case.dtype == Dtype::F64 {
            case.tolerances.get(name).copied().filter(|t| t.rtol >= Tolerance::FP32.rtol).unwrap_or(Tolerance::FP32)
        } else {
            case.tolerance_for(name)
        }
    };
    Ok(compare_outputs(&expected, &produced, tol_for))
}

/// A segmentor case's weights: an `.npz` state dict in MMSegmentation names, or any checkpoint
/// (`.pth`, `.safetensors`, `.npz`) in another dialect (official, UNILM ADE20K, HF; optional
/// manifest field `weights_dialect`), converted to MMSegmentation names first, with rel-pos
/// tables resized to the configured window. The latter is how a fixture checks that a model
/// built from a converted checkpoint matches MMSegmentation built from the same source.
pub fn load_case_weights(case: &Case, model: &SegmentorConfig) -> Result<Vec<(String, AnyArray)>, BackendError> {
    use crate::checkpoint::{convert, detect_dialect, read_any, ConvertOptions, Dialect, ReadOptions};
    let path = case.file_field("weights")?;
    let state = read_any(&path, ReadOptions { widen_half: true, ..Default::default() })?;
    let hint = case.manifest.get("weights_dialect").and_then(|v| v.as_str());
    let dialect = match hint {
        Some(n) => Dialect::from_name(n)
            .ok_or_else(|| format!("{}: unknown weights_dialect `{n}`", case.dir.join("case.json").display()))?,
        None => detect_dialect(state.iter().map(|(k, _)| k.as_str()))?,
    };
    if dialect == Dialect::Mmseg {
        return Ok(state);
    }
    let (wh, ww) = model.backbone.window();
    let opts = ConvertOptions {
        dialect: Some(dialect),
        dst_window: (wh == ww).then_some((wh, ww)),
        final_norm: model.backbone.final_norm,
    };
    let (out, _report) = convert(state, &opts).map_err(|e| format!("{}: {e}", path.display()))?;
    if !out.iter().any(|(k, _)| k.starts_with("backbone.")) {
        return Err(format!(
            "{}: a backbone-only checkpoint ({dialect}) cannot build a whole segmentor",
            path.display()
        )
        .into());
    }
    Ok(out)
}

/// Compares expected tensors with produced ones. Label maps named `pred` / `pred.<stem>` use
/// the expected `seg_logits` / `seg_logits.<stem>` for the near-tie rule.
pub fn compare_outputs(
    expected: &[(String, AnyArray)],
    produced: &BTreeMap<String, OutTensor>,
    tol_for: impl Fn(&str) -> Tolerance,
) -> Vec<TensorResult> {
    let find = |n: &str| expected.iter().find(|(k, _)| k == n).map(|(_, a)| a);
    expected
        .iter()
        .map(|(name, exp)| {
            let tol = tol_for(name);
            match (produced.get(name), exp.is_float()) {
                (None, _) => TensorResult::not_covered(name, exp.shape(), tol),
                (Some(OutTensor::Float(a)), true) => compare_floats(name, a, &exp.to_f64(), tol),
                (Some(OutTensor::Label(a)), false) => {
                    let logits_name =
                        if name == "pred" { "seg_logits".to_string() } else { name.replacen("pred", "seg_logits", 1) };
                    let logits = find(&logits_name).filter(|l| l.is_float()).map(|l| l.to_f64());
                    let ltol = tol_for(&logits_name);
                    compare_labels(name, a, &exp.to_i64().unwrap_or_default(), logits.as_ref(), ltol)
                }
                (Some(OutTensor::Float(a)), false) => compare_floats(name, a, &exp.to_f64(), tol),
                (Some(OutTensor::Label(a)), true) => compare_floats(name, &a.mapv(|v| v as f64), &exp.to_f64(), tol),
            }
        })
        .collect()
}
